"""Certified robustness: guarantees that no perturbation within a budget changes a prediction.

bounds        `certify(model, x, y, eps, method="crown" | "ibp")`: certified L-inf accuracy of a feed-forward
              torch model by bound propagation; IBP training (Gowal et al. 2018): `ibp_step`, `train_ibp`
propagation   IBP (Gowal et al. 2018) and CROWN (Zhang et al., NeurIPS 2018) through a network
layers        the supported layers (others refused by name), each one's interval and linear-relaxation transfer
smoothing     randomized smoothing (Cohen et al., ICML 2019): noise training, certified L2 radius
"""
