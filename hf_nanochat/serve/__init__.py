"""Serving: the generation engine with its calculator tool, the Gradio app and the terminal chat."""
