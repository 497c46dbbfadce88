"""Behavioural checks and repairs of a model you did not build: Neural Cleanse and MM-BD (is there a backdoor,
and to which class?), the backdoor scan that combines them by a rule calibrated on a model zoo, and
fine-pruning (remove it). They run the model, so they need torch; nothing on the scanning path imports this
package."""
