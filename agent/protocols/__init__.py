"""Protocol adapters over the conversation core: each maps its wire events to conversation
commands and shows responses in its own dialect."""
