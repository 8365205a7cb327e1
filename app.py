"""`python app.py`: the chat app (assistant.app) on the shipped checkpoint, as `inspection-assistant serve` with
no options: 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise; prints the URL."""
import sys

from assistant.app import serve

if __name__ == "__main__":
    if sys.argv[1:]:
        sys.exit("python app.py takes no options; use `inspection-assistant serve --help` for them")
    sys.exit(serve())
