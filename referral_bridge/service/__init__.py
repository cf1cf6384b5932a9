"""One inbound message to a verdict, and the effects a verdict has."""
