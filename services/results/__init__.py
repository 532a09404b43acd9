"""Result service: fuses the models' predictions, maps them to a marketplace category, stores, publishes, answers."""
