"""Tools an operator on call uses: dead letters, masking, the audit trail, rule explanations."""
