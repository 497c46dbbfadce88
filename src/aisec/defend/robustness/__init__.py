"""The robustness principle ("make your model robust against attacks"): controls at training and at serving time.

output_hardening   top-k, rounded and label-only answers of a served model
prada              a query monitor that catches extraction in one client's query stream (PRADA)
strip              a run-time input filter that catches triggered inputs (STRIP)
dp_training        private training (DP-SGD) that bounds what the model reveals about any one record
"""
