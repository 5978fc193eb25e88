from creditapp import create_app

app = create_app()
