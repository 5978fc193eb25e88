from creditapp.startup import app_or_exit

# This deployment's settings (config.py); a refused setting: one line naming it, and exit (not a
# traceback per worker).
app = app_or_exit("config")
