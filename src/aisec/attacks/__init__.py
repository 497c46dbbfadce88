"""The red team: one package per attack class (`aisec.core.attack_class.AttackClass`). Each attack is a
function over batched tensors with a small frozen config."""
