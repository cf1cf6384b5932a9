"""The pure decision core: contract models, policy, decisions and calendar maths.

Nothing in this package performs I/O or reads the clock; a test enforces what it may import.
"""
