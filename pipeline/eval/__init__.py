"""Evaluation: the synthetic-domain metrics (`synthetic`), the mouth reader (`mouth`)."""
