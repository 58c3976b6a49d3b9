"""Socket.IO event handlers."""
