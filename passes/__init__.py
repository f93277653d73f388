"""sparsefuse.passes"""
