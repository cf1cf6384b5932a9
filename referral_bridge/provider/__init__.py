"""A provider's side: the reference HTTPS inbox and telling the force about outcomes."""
