"""How a causal LM scores labels: whole-string tokenization, the prefix cache, the length policy, the verbalizer."""
