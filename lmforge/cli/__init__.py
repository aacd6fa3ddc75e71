"""lmforge.cli"""
