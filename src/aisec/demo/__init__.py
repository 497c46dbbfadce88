"""The built-in demo: a small CNN trained on scikit-learn's digits, assessed end to end."""
