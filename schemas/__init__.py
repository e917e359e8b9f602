"""The documents: desired state (v1alpha1), node config and node status, as pydantic models.

Imports nothing from reconciler/; the JSON Schemas under schemas/json are generated from here.
"""
