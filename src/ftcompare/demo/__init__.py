"""The Gradio demo (`make demo`): chat side by side, email proofreader, inspect. See app.py."""
