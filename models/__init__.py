"""sparsefuse.models"""
