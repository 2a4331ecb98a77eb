"""The data plane's HTTP routes (OpenAI-compatible)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from relay.api.account import show_balance, show_calling_key
from relay.api.audio import speech, transcriptions, translations
from relay.api.chat import chat_completions, completions, embeddings, moderations
from relay.api.images import edit_images, generate_images
from relay.api.messages import count_tokens, messages
from relay.api.models import healthz, list_models, show_model
from relay.api.responses import create_response, delete_response, retrieve_response
from relay.api.videos import create_video, show_video, video_content
from relay.http.disconnect import CancelOnDisconnect, Endpoint

__all__ = ["data_plane_routes"]


def _billable(path: str, endpoint: Endpoint) -> Route:
    """A billable route whose handler is cancelled when its client leaves mid-wait (a 499).

    Not ``POST /v1/videos``: cancelling it between the upstream's creation of a job and
    relay storing it would leave an upstream job running that nobody pays for.
    """
    return Route(path, CancelOnDisconnect(endpoint), methods=["POST"], name=endpoint.__name__)


def data_plane_routes() -> list[BaseRoute]:
    return [
        _billable("/v1/chat/completions", chat_completions),
        _billable("/v1/completions", completions),
        _billable("/v1/embeddings", embeddings),
        _billable("/v1/moderations", moderations),
        _billable("/v1/audio/transcriptions", transcriptions),
        _billable("/v1/audio/translations", translations),
        _billable("/v1/audio/speech", speech),
        _billable("/v1/messages", messages),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        _billable("/v1/responses", create_response),
        Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        _billable("/v1/images/generations", generate_images),
        _billable("/v1/images/edits", edit_images),
        Route("/v1/videos", create_video, methods=["POST"]),
        Route("/v1/videos/{video_id}", show_video, methods=["GET"]),
        Route("/v1/videos/{video_id}/content", video_content, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", show_model, methods=["GET"]),
        Route("/v1/balance", show_balance, methods=["GET"]),
        Route("/v1/key", show_calling_key, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
