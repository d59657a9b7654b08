"""The typed request and answer of the API, as ``/docs`` shows them."""
from __future__ import annotations

from pydantic import BaseModel, Field


class RecognizeJSON(BaseModel):
    """The JSON form of a request."""
    image: str | list[str] = Field(description="base64 image (a data: URL is fine), or a list of them")
    model: str | None = Field(None, description="model name (default: the first model served)")
    answer: bool = Field(False, description="also give the value of each reading that is arithmetic (12+3=?)")


class Reading(BaseModel):
    text: str
    confidence: float = Field(description="the reading's probability after the model's calibration on its "
                                          "validation split (the error measured on new images: docs/results.md)")
    accept: bool = Field(description="confidence at or above the model's accept threshold (always, without one)")
    model: str
    answer: int | float | None = Field(None, description="with answer=true: the value of an arithmetic reading, or "
                                             "null when the reading is none (then answer_error says why)")
    answer_error: str | None = Field(None, description="with answer=true: why the reading has no value")


class Timing(BaseModel):
    decode_ms: float = Field(description="reading the images into model input")
    queue_ms: float = Field(description="waiting for the forward pass")
    model_ms: float = Field(description="the forward pass this request was part of")
    total_ms: float
    batch_images: int = Field(description="images in that forward pass, this request's and others'")


class RecognizeResponse(BaseModel):
    results: list[Reading]
    timing: Timing


class InputSize(BaseModel):
    width: int
    height: int
    channels: int
    ink: list[tuple[int, int, int]] = Field(default=[], description="flat colours (RGB) whose masks the model "
                                            "reads after the image's channels")


class ModelInfo(BaseModel):
    name: str
    arch: str
    alphabet: str
    length: int | None
    input: InputSize
    format: str
    temperature: float
    threshold: float | None
    loaded_at: str
    error: str | None = Field(description="why the last reload of the file failed (the old model keeps serving)")


class ErrorResponse(BaseModel):
    error: str
