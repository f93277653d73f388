"""sparsefuse.targets"""
