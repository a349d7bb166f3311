"""landscope: does the loss landscape along *your* training trajectory satisfy the conditions the theory assumes?"""

__version__ = "0.1.0"
