"""Venue health per account."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors
from trading.models import VenueAccount


class VenueHealthOutput(serializers.Serializer):
    account = serializers.IntegerField(source="account_id")
    account_name = serializers.CharField()
    venue = serializers.ChoiceField(choices=VenueAccount.Venue.choices)
    network = serializers.ChoiceField(choices=VenueAccount.Network.choices)
    breaker_state = serializers.ChoiceField(
        choices=["closed", "open", "half_open", "none"],
        help_text="the venue's circuit breaker as last reported by a worker; none for paper accounts")
    breaker_since = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True, help_text="error class and message, never a secret")
    reported_by = serializers.CharField(allow_blank=True, help_text="host:pid of the reporting process")
    last_reconciled_at = serializers.DateTimeField(allow_null=True)
    reconcile_summary = serializers.DictField(
        help_text="ok, error, and counts of the last reconciliation report (unknown venue orders, position "
                  "differences, updated orders, ...)")
    snapshot_failures = serializers.IntegerField(
        help_text="consecutive equity snapshots that could not value the account (no row written); 0 when the last "
                  "one did")
    snapshot_error = serializers.CharField(allow_blank=True, help_text="the latest failed snapshot's error, never a "
                                                                       "secret; empty once one succeeds again")
    snapshot_failed_at = serializers.DateTimeField(allow_null=True)


class VenueHealthListApi(APIView):
    @extend_schema(operation_id="venues_list", responses=VenueHealthOutput(many=True), tags=["venues"],
                   description="Per account: venue, network, circuit-breaker state, last error, last reconciliation, "
                               "equity snapshot failures.")
    def get(self, request: Request) -> Response:
        return Response(VenueHealthOutput(selectors.venue_health_list(), many=True).data)


