"""The local admin HTTP API: users, recent decisions, config check (docs/api/openapi.yaml)."""

from voxgate.api.app import ApiError, create_app, load_token
from voxgate.api.server import ApiServer
from voxgate.api.users import UserAdmin

__all__ = ["ApiError", "ApiServer", "UserAdmin", "create_app", "load_token"]
