"""The Gemini Live protocol."""
