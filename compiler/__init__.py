"""sparsefuse.compiler"""
