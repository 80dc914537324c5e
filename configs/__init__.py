"""Run configurations (ml_collections): `base.py` holds every default; phase files override."""
