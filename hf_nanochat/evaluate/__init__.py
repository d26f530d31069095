"""Evaluation: base-model bits per byte and the chat tasks (ChatCORE), with the code sandbox."""
