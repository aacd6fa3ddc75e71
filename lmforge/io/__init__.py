"""lmforge.io"""
