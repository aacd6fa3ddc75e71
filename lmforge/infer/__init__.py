"""lmforge.infer"""
