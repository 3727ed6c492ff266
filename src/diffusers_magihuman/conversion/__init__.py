"""Converters from the original daVinci-MagiHuman release to diffusers folders.

Nothing at inference time imports this package; it is used by ``magihuman convert`` and the scripts in the
repository's ``conversion/`` folder.
"""
