from creditapp.startup import app_or_exit

app = app_or_exit()  # a refused setting: one line naming it, and exit (not a traceback per worker)
