"""The HTTP entry points of the ingress: package requests, downloads, read endpoints, health and OpenAPI."""
