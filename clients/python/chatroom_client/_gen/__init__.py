"""Generated from proto/chatroom/v1/chatroom.proto by generate.py; do not edit."""
