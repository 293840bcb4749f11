"""Test-only APIViews wired through tests/idempotency/urls.py to exercise @idempotent.

Each execution is counted twice: a Redis INCR outside any transaction (counts every run, even one
rolled back) and an outbox event inside the handler's transaction (counts committed work). The
Redis counter uses its own client on REDIS_URL so that tests pointing the cache at a dead Redis
still count.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis
from django.conf import settings
from django.db import connection
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotency.decorators import idempotent
from idempotency.models import IdempotencyRecord
from outbox.services import outbox_publish

COUNTER_KEY = "idem-test:executions"
FAIL_KEY = "idem-test:fail-next"  # how many of the next executions fail
AGGREGATE = "idem-test"


def test_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _handle(request) -> Response:
    client = test_redis()
    number = client.incr(COUNTER_KEY)
    outbox_publish(aggregatetype=AGGREGATE, aggregateid=str(number), type="thing.created", payload={})
    serializer = ThingInput(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    if data["delay_ms"]:
        time.sleep(data["delay_ms"] / 1000)  # simulated work, to widen the race window
    if data["fail"] == "steal":
        # Another process takes the key over while this handler runs (as after a lock timeout).
        IdempotencyRecord.objects.filter(key=request.headers["Idempotency-Key"]).update(
            lock_token=uuid.uuid4()
        )
    if data["fail"] == "steal-then-invalid":
        # The same, committed on another connection so that the rollback of this handler's raise
        # cannot undo it (needs a test with real transactions); then a storable 400 is raised.
        _take_over_committed(request.headers["Idempotency-Key"])
        raise serializers.ValidationError({"name": ["Rejected after the key was taken over."]})
    if data["fail"] != "steal" and client.decr(FAIL_KEY) >= 0:
        if data["fail"] == "raise":
            raise RuntimeError("simulated crash")
        return Response({"detail": "unavailable"}, status=int(data["fail"] or 503))
    client.set(FAIL_KEY, 0)
    user = request.user
    return Response(
        {
            "id": number,
            "name": data["name"],
            "execution": uuid.uuid4().hex,
            "user": getattr(user, "user_id", None),
        },
        status=201,
        headers={"Location": f"/t/things/{number}"},
    )


def _take_over_committed(key: str) -> None:
    def take_over() -> None:
        try:
            IdempotencyRecord.objects.filter(key=key).update(lock_token=uuid.uuid4())
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=take_over)
    thread.start()
    thread.join()


class ThingInput(serializers.Serializer):
    name = serializers.CharField(max_length=50)
    delay_ms = serializers.IntegerField(required=False, default=0, min_value=0, max_value=5000)
    fail = serializers.CharField(required=False, default="")


class ThingCreateApi(APIView):
    @idempotent()
    def post(self, request):
        return _handle(request)


class PublicThingCreateApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @idempotent()
    def post(self, request):
        return _handle(request)


class OptionalThingCreateApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @idempotent(required=False)
    def post(self, request):
        return _handle(request)
