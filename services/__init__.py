"""The product classification platform's services: gateway, preprocessing, results, and what they share."""
