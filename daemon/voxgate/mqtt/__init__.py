"""MQTT: the paho-mqtt link (client.py), topic names (topics.py), Home Assistant discovery
(discovery.py) and signed commands (commands.py)."""
