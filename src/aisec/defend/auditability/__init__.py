"""The auditability principle ("make sure your model is auditable"): evidence of what a model's decisions rest
on, which a reviewer can check. `explanations` attributes single decisions to input features (integrated
gradients, saliency, occlusion and DeepLift through Captum) and measures permutation importance for black boxes;
`shortcuts` checks whether a class is recognised by a shortcut (a watermark, a corner patch) instead of the
object itself. A tamper-evident audit log and model cards come next. Importing this package imports no torch.
"""
