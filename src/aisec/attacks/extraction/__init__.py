"""Model extraction: rebuilding a model from its answers, by solving equations (linear and logistic models) or by
training a surrogate on the answers to the attacker's queries."""
