"""The data plane's HTTP routes (OpenAI-compatible)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from relay.api.account import show_balance, show_calling_key
from relay.api.chat import chat_completions, embeddings
from relay.api.images import generate_images
from relay.api.messages import count_tokens, messages
from relay.api.models import healthz, list_models, show_model
from relay.api.responses import create_response, delete_response, retrieve_response
from relay.api.videos import create_video, show_video, video_content

__all__ = ["data_plane_routes"]


def data_plane_routes() -> list[BaseRoute]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/v1/images/generations", generate_images, methods=["POST"]),
        Route("/v1/videos", create_video, methods=["POST"]),
        Route("/v1/videos/{video_id}", show_video, methods=["GET"]),
        Route("/v1/videos/{video_id}/content", video_content, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", show_model, methods=["GET"]),
        Route("/v1/balance", show_balance, methods=["GET"]),
        Route("/v1/key", show_calling_key, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
