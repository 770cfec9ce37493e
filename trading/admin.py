"""Admin: configuration is edited through the services' validation; state-machine rows are read-only."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from trading import services
from trading.audit import audit
from trading.models import (
    AuditEvent,
    EquitySnapshot,
    Fill,
    KillSwitch,
    MarketPrice,
    Order,
    Position,
    Signal,
    Strategy,
    VenueAccount,
)
from trading.orders import order_cancel


class _ServiceForm(forms.ModelForm):
    """A model form whose validation is the service's, so admin, API and services refuse the same input."""

    validate: Any = None

    def clean(self) -> dict[str, Any]:
        data = cast("dict[str, Any]", super().clean())  # ModelForm.clean returns cleaned_data
        raw = {name: data.get(name) for name in self.fields}
        _, errors = type(self).validate(raw, instance=self.instance if self.instance.pk else None)
        for field, problems in errors.items():
            target = field if field in self.fields else None
            for problem in problems:
                self.add_error(target, problem if target else f"{field}: {problem}")
        return data


class AccountForm(_ServiceForm):
    validate = staticmethod(services.account_validate)

    class Meta:
        model = VenueAccount
        fields = [
            "name", "venue", "network", "credentials_env", "quote_asset", "max_leverage", "market_leverage_caps",
            "max_open_positions", "max_symbol_exposure", "max_account_exposure", "daily_loss_limit",
            "paper_initial_cash", "paper_slippage_bps", "paper_max_volume_share", "paper_latency_ms", "price_feed",
        ]


class StrategyForm(_ServiceForm):
    validate = staticmethod(services.strategy_validate)

    class Meta:
        model = Strategy
        fields = [
            "name", "slug", "kind", "symbol", "timeframe", "params", "account", "mode", "sizing_mode",
            "sizing_value", "stop_loss_mode", "stop_loss_value", "take_profit_mode", "take_profit_value", "leverage",
            "protective_orders", "trailing_stop_percent", "trailing_activation_percent",
        ]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that change only through services: viewable, never added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


class _AuditedDeletes(admin.ModelAdmin):
    """Deleting in the admin writes one audit row per object, in the deletion's transaction."""

    def _audit_deleted(self, request: HttpRequest, obj: Any) -> None:
        name = obj._meta.model_name
        audit(actor=_actor(request), action=f"{name}.deleted", entity=name, entity_id=obj.pk, now=timezone.now(),
              name=str(obj))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            self._audit_deleted(request, obj)
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self._audit_deleted(request, obj)
            super().delete_queryset(request, queryset)


@admin.register(VenueAccount)
class VenueAccountAdmin(_AuditedDeletes):
    form = AccountForm
    list_display = ("name", "venue", "network", "cash", "max_leverage", "daily_loss_limit", "last_reconciled_at")
    readonly_fields = ("cash", "paper_cash", "day_start", "day_start_equity", "last_reconciled_at",
                       "last_reconcile_report")

    def save_model(self, request: HttpRequest, obj: VenueAccount, form: Any, change: bool) -> None:
        data = {f: form.cleaned_data.get(f) for f in form.Meta.fields}
        if change:
            services.account_update(account=VenueAccount.objects.get(pk=obj.pk), data=data, by=_actor(request))
        else:
            obj.pk = services.account_create(data=data, by=_actor(request)).pk


@admin.register(Strategy)
class StrategyAdmin(_AuditedDeletes):
    form = StrategyForm
    list_display = ("slug", "kind", "symbol", "timeframe", "account", "mode", "status", "last_evaluated_at")
    list_filter = ("status", "mode", "kind")
    readonly_fields = ("status", "last_error", "last_evaluated_at")
    actions = ["start", "pause", "stop"]

    def save_model(self, request: HttpRequest, obj: Strategy, form: Any, change: bool) -> None:
        data = {f: form.cleaned_data.get(f) for f in form.Meta.fields}
        if change:
            services.strategy_update(strategy=Strategy.objects.get(pk=obj.pk), data=data, by=_actor(request))
        else:
            obj.pk = services.strategy_create(data=data, by=_actor(request)).pk

    @admin.action(description="Start selected strategies")
    def start(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        for s in queryset:
            services.strategy_start(strategy=s, by=_actor(request))

    @admin.action(description="Pause selected strategies")
    def pause(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        for s in queryset:
            services.strategy_pause(strategy=s, by=_actor(request))

    @admin.action(description="Stop selected strategies")
    def stop(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        for s in queryset:
            services.strategy_stop(strategy=s, by=_actor(request))


@admin.register(Signal)
class SignalAdmin(ReadOnlyAdmin):
    list_display = ("id", "strategy", "source", "action", "symbol", "status", "decision_rule", "received_at",
                    "filled_at")
    list_filter = ("status", "source", "decision_rule")
    list_select_related = ("strategy",)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("id", "client_order_id", "strategy", "symbol", "side", "type", "quantity", "status",
                    "filled_quantity", "average_fill_price", "created_at")
    list_filter = ("status", "side", "type", "purpose")
    search_fields = ("client_order_id", "venue_order_id")
    list_select_related = ("strategy",)
    actions = ["cancel"]

    @admin.action(description="Cancel selected orders")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        for order in queryset:
            order_cancel(order_id=order.pk, by=_actor(request))


@admin.register(Fill)
class FillAdmin(ReadOnlyAdmin):
    list_display = ("id", "order", "symbol", "side", "quantity", "price", "fee", "realized_pnl", "time")
    list_select_related = ("order",)


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = ("strategy", "account", "symbol", "quantity", "average_entry", "realized_pnl", "fees_paid",
                    "stop_loss", "take_profit", "updated_at")
    list_select_related = ("strategy", "account")


@admin.register(EquitySnapshot)
class EquitySnapshotAdmin(ReadOnlyAdmin):
    list_display = ("time", "account", "strategy", "equity", "realized_pnl", "unrealized_pnl")
    list_select_related = ("strategy", "account")


@admin.register(MarketPrice)
class MarketPriceAdmin(ReadOnlyAdmin):
    list_display = ("feed", "symbol", "price", "volume", "time")
    list_filter = ("feed",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("time", "actor", "action", "entity", "entity_id")
    list_filter = ("action", "entity")


@admin.register(KillSwitch)
class KillSwitchAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "reason", "changed_at", "changed_by")
    actions = ["engage", "release"]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        KillSwitch.objects.get_or_create(pk=1)
        return super().changelist_view(request, extra_context)

    @admin.action(description="ENGAGE the kill switch (halt entries, cancel orders, close positions)")
    def engage(self, request: HttpRequest, queryset: QuerySet[KillSwitch]) -> None:
        services.kill_switch_engage(by=_actor(request), reason="engaged from admin")
        self.message_user(request, "Kill switch engaged.", messages.WARNING)

    @admin.action(description="Release the kill switch")
    def release(self, request: HttpRequest, queryset: QuerySet[KillSwitch]) -> None:
        services.kill_switch_release(by=_actor(request))
        self.message_user(request, "Kill switch released.")


__all__ = ["ValidationError"]


# --------------------------------------------------------------------------------------------- API tokens

from django.template.response import TemplateResponse  # noqa: E402
from knox.models import AuthToken  # noqa: E402


class ApiTokenAddForm(forms.ModelForm):
    days = forms.IntegerField(
        required=False, min_value=0, max_value=36500,
        help_text="Days until the token expires. Blank: the default (API_TOKEN_TTL_DAYS); 0: it never expires.")

    class Meta:
        model = AuthToken
        fields = ["user"]


# knox's own admin shows a new key in a flash message (kept in a cookie or the session until shown): ours shows it
# once on the page that answers the creation, never cached. Only the digest and a short prefix are stored.
if admin.site.is_registered(AuthToken):
    admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "created", "expiry", "expired")
    list_select_related = ("user",)
    search_fields = ("token_key", "user__username")
    readonly_fields = ("prefix", "user", "created", "expiry")
    fields = ("prefix", "user", "created", "expiry")
    raw_id_fields = ("user",)
    actions = ["revoke_tokens"]

    @admin.display(description="prefix")
    def prefix(self, obj: Any) -> str:
        return f"{obj.token_key[:services.TOKEN_PREFIX_LENGTH]}…"

    @admin.display(boolean=True)
    def expired(self, obj: Any) -> bool:
        return obj.expiry is not None and obj.expiry <= timezone.now()

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("user", "days") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a token is issued or revoked, never edited

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        from datetime import timedelta

        days = form.cleaned_data.get("days")
        ttl: Any = services._DEFAULT_TTL if days is None else (timedelta(days=days) if days else None)
        token, key = services.api_token_create(user=form.cleaned_data["user"], by=_actor(request), ttl=ttl)
        obj.digest, obj.token_key, obj.created, obj.expiry = token.digest, token.token_key, token.created, token.expiry
        obj._state.adding, obj._state.db = False, token._state.db
        request._api_token_key = key  # type: ignore[attr-defined]  # for response_add only

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: str | None = None) -> Any:
        key = getattr(request, "_api_token_key", None)
        if key is None:
            return super().response_add(request, obj, post_url_continue)
        response = TemplateResponse(request, "admin/api_token_created.html", {
            **self.admin_site.each_context(request), "title": "API token created", "key": key, "token": obj,
            "opts": self.opts, "prefix": self.prefix(obj)})
        response["Cache-Control"] = "no-store, private"
        return response

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        services.api_token_revoke(token=obj, by=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for token in queryset.select_related("user"):
            services.api_token_revoke(token=token, by=_actor(request))

    @admin.action(description="Revoke selected tokens (their keys stop working at once)", permissions=["delete"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = queryset.count()
        self.delete_queryset(request, queryset)
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
