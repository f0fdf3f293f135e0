# The BERMo modeling files. They are copied next to every checkpoint and load there on their own
# (trust_remote_code=True); the installed package exposes this folder as `bermo.modeling`.
