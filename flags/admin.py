"""The Django admin: ops' home for flags, user lists and segments. Every save goes through flags.services."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from . import selectors, services
from .actors import Actor
from .forms import JSONTextField, UserIdsField, show_refusal
from .models import AuditEntry, Flag, MemberKind, OverrideKind, Segment, Source, UserOverride

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldOpts

INLINE_OVERRIDES_SHOWN = 50


def _error_text(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


# --- a service's refusal, shown on the form's fields ------------------------------------------------------------
#
# The services validate under their row locks and raise ValidationError naming fields ("rules[1].conditions[0]
# .values", "included", "name"). The admin's transaction is rolled back; ServiceAdmin then runs the same
# request through the admin once more with the refusal, and ServiceForm puts each message on the field it
# names (the part before the first "[" or "."), so the page keeps what was typed. The rule stays the service's.

_refusal: ContextVar[ValidationError | None] = ContextVar("admin_refusal", default=None)


class ServiceForm(forms.ModelForm):
    refusal: ClassVar[ValidationError | None] = None  # set by ServiceAdmin.get_form on the second run

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}  # Django's clean() returns cleaned_data, typed as optional
        if self.refusal is not None:
            show_refusal(self, self.refusal)
        return cleaned


class ServiceAdmin(admin.ModelAdmin):
    """An admin whose save_model calls a service: the service's ValidationError becomes form errors."""

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False,
                 **kwargs: Any) -> type[forms.ModelForm[Any]]:
        if kwargs.get("fields"):
            # A declared field named after a non-editable model field (a flag's rules, a segment's conditions:
            # written by the services only) is one the form always has; named here, Django refuses it.
            kwargs["fields"] = [name for name in kwargs["fields"] if name not in self.form.declared_fields]
        form = super().get_form(request, obj, change, **kwargs)
        refusal = _refusal.get()
        if refusal is None:
            return form
        return type(form.__name__, (form,), {"refusal": refusal})

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            if _refusal.get() is not None:
                raise
            token = _refusal.set(exc)
            try:  # nothing was written (the admin's transaction rolled back): show the form with the errors
                return super().changeform_view(request, object_id, form_url, extra_context)
            finally:
                _refusal.reset(token)


class FlagAdminForm(ServiceForm):
    reason = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text="Why you make this change: kept in the audit log.",
    )
    expected_version = forms.IntegerField(required=False, widget=forms.HiddenInput)
    confirm_reshuffle = forms.BooleanField(
        required=False,
        label="I understand this reshuffles users",
        help_text="Needed to change the bucketing or the salt: it changes which users are in the rollout.",
    )
    rules = JSONTextField(
        required=False,
        label="Targeting rules",
        widget=forms.Textarea(attrs={"rows": 16, "cols": 100, "class": "vLargeTextField"}),
        help_text='A JSON list, checked in order between the deny list and the rollout percentage: '
        '[{"id": "staff", "serve": "on", "conditions": [{"attribute": "email", "operator": "ends_with", '
        '"values": ["@ourcompany.com"]}]}, {"id": "beta", "serve": "percentage", "percentage": 12.5, '
        '"segment": "beta"}]. Segments are named by key. Empty: no rules.',
    )

    class Meta:
        model = Flag
        fields = ["key", *services.EDITABLE_FIELDS]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.fields["expected_version"].initial = self.instance.version
            self.fields["rules"].initial = self.instance.rules
        if "name" in self.fields:
            self.fields["name"].required = False
            self.fields["name"].help_text = "Defaults to the key."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}  # Django's clean() returns cleaned_data, typed as optional
        if not cleaned.get("salt"):
            cleaned["salt"] = cleaned.get("key") or self.instance.key  # the salt defaults to the key
        if not self.instance.pk:
            return cleaned
        # The rule is the service's (flag_update refuses the same change); the form asks before saving.
        changes = {name: cleaned[name] for name in services.RESHUFFLING_FIELDS if cleaned.get(name) not in ("", None)}
        reshuffles = services.reshuffles(self.instance, changes)
        if reshuffles and not cleaned.get("confirm_reshuffle"):
            for name in reshuffles:
                self.add_error(name, "This reshuffles which users are in the rollout: tick the confirmation.")
        return cleaned


class UserOverrideInline(admin.TabularInline):
    model = UserOverride
    extra = 1
    fields = ["user_id", "kind", "note", "added_by", "created_at"]
    readonly_fields = ["added_by", "created_at"]
    verbose_name = "allow/deny entry"
    verbose_name_plural = (
        f"allow/deny entries (the {INLINE_OVERRIDES_SHOWN} most recent; all of them in the User overrides "
        "admin, many at once with 'Import or remove lists')"
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[UserOverride]:
        qs = super().get_queryset(request)
        object_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if not object_id:
            return qs.none()
        # Lists can hold 100,000 users: the inline shows the latest few, never the whole list.
        recent = UserOverride.objects.filter(flag_id=object_id).order_by("-created_at", "-id")
        return qs.filter(pk__in=Subquery(recent.values("pk")[:INLINE_OVERRIDES_SHOWN]))


@admin.register(Flag)
class FlagAdmin(ServiceAdmin):
    form = FlagAdminForm
    inlines = [UserOverrideInline]
    list_display = [
        "key",
        "name",
        "enabled",
        "rollout_display",
        "bucketing",
        "version",
        "last_change_display",
    ]
    list_filter = ["enabled", "bucketing"]
    search_fields = ["key", "name"]
    readonly_fields = ["version", "list_sizes", "links", "created_at", "updated_at"]

    def get_fieldsets(self, request: HttpRequest, obj: Flag | None = None) -> tuple[tuple[str | None, _FieldOpts], ...]:
        main: tuple[str, ...] = ("key", "name", "description", "enabled", "rollout_percentage")
        if obj is not None:
            main = ("name", "description", "enabled", "rollout_percentage")
        sets: list[tuple[str | None, _FieldOpts]] = [
            (None, {"fields": main}),
            ("Bucketing", {"fields": ["bucketing", "salt", "confirm_reshuffle"] if obj else ["bucketing", "salt"]}),
            ("Modes compared on the dashboard", {"fields": ["treatment_mode", "baseline_mode"]}),
            ("Browsers", {"fields": ["client_side"]}),
            ("This change", {"fields": ["reason", "expected_version"]}),
        ]
        if obj is not None:
            sets.insert(1, ("State", {"fields": ["version", "list_sizes", "links", "created_at", "updated_at"]}))
            # Rules are set on a flag that exists (services.flag_set_rules), after its other settings.
            sets.insert(-1, ("Targeting rules", {"fields": ["rules"]}))
        return tuple(sets)

    def get_readonly_fields(self, request: HttpRequest, obj: Flag | None = None) -> list[str]:
        fields = list(self.readonly_fields)
        if obj is not None:
            fields.insert(0, "key")
        return fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Flag]:
        return selectors.flags_with_last_change()

    def has_delete_permission(self, request: HttpRequest, obj: Flag | None = None) -> bool:
        # The audit log keeps every flag's history; the kill switch is how a flag is retired.
        return False

    @admin.display(description="rollout", ordering="rollout_percentage")
    def rollout_display(self, obj: Flag) -> str:
        return f"{obj.rollout_percentage}%"

    @admin.display(description="last change", ordering="last_change_at")
    def last_change_display(self, obj: Flag) -> str:
        at = getattr(obj, "last_change_at", None)
        if at is None:
            return "-"
        by, action = getattr(obj, "last_change_by", ""), getattr(obj, "last_change_action", "")  # annotations
        return f"{timezone.localtime(at):%Y-%m-%d %H:%M} by {by} ({action})"

    @admin.display(description="list sizes")
    def list_sizes(self, obj: Flag) -> str:
        counts = selectors.override_counts(obj)
        return f"allow: {counts['allow']}, deny: {counts['deny']}"

    @admin.display(description="")
    def links(self, obj: Flag) -> str:
        return format_html(
            '<a href="{}">Import or remove lists</a> · <a href="{}?flag__id__exact={}">All allow/deny entries</a>'
            ' · <a href="{}?flag__id__exact={}">Audit log</a>',
            reverse("admin:flags_flag_lists", args=[obj.pk]),
            reverse("admin:flags_useroverride_changelist"),
            obj.pk,
            reverse("admin:flags_auditentry_changelist"),
            obj.pk,
        )

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:  # a service's ValidationError is shown on the form (ServiceAdmin)
            return super().changeform_view(request, object_id, form_url, extra_context)
        except services.VersionConflict as exc:
            messages.error(request, str(exc))
        # The transaction was rolled back; show the flag as it is now.
        return HttpResponseRedirect(request.path)

    def save_model(self, request: HttpRequest, obj: Flag, form: FlagAdminForm, change: bool) -> None:
        actor = Actor.for_user(request.user)
        data = form.cleaned_data
        reason = data.get("reason", "")
        if not change:
            created = services.flag_create(
                key=data["key"],
                name=data.get("name") or data["key"],
                description=data.get("description", ""),
                enabled=data.get("enabled", False),
                rollout_percentage=data.get("rollout_percentage") or 0,
                bucketing=data.get("bucketing") or "murmur3",
                salt=data.get("salt") or "",
                treatment_mode=data.get("treatment_mode") or "patch",
                baseline_mode=data.get("baseline_mode") or "single",
                client_side=bool(data.get("client_side")),
                actor=actor,
                source=Source.ADMIN,
                reason=reason,
            )
            obj.pk = created.pk
            obj._state.adding = False
            obj.version = created.version
            return
        changes = {name: data[name] for name in services.EDITABLE_FIELDS if name in data}
        changes["name"] = changes.get("name") or obj.key
        changes["salt"] = changes.get("salt") or Flag.objects.get(pk=obj.pk).salt
        updated = services.flag_update(
            flag=obj.key,
            actor=actor,
            source=Source.ADMIN,
            reason=reason,
            expected_version=data.get("expected_version"),
            confirm_reshuffle=bool(data.get("confirm_reshuffle")),
            **changes,
        )
        if "rules" in form.data:  # a page from before the rules field leaves them alone (it posts no "rules")
            # The version this request's own update left, checked above against the page's.
            updated = services.flag_set_rules(flag=obj.key, rules=data["rules"], actor=actor, source=Source.ADMIN,
                                              reason=reason, expected_version=updated.version)
        obj.version = updated.version

    def save_formset(self, request: HttpRequest, form: FlagAdminForm, formset: forms.BaseModelFormSet[Any, Any],
                     change: bool) -> None:
        if formset.model is not UserOverride:
            super().save_formset(request, form, formset, change)
            return
        actor = Actor.for_user(request.user)
        flag = form.instance
        reason = form.cleaned_data.get("reason", "")
        objects = formset.save(commit=False)
        for gone in formset.deleted_objects:
            services.override_remove(
                flag=flag.key, user_id=gone.user_id, actor=actor, source=Source.ADMIN, reason=reason
            )
        for item in objects:
            if item.pk is None:
                services.override_add(
                    flag=flag.key,
                    user_id=item.user_id,
                    kind=item.kind,
                    note=item.note,
                    actor=actor,
                    source=Source.ADMIN,
                    reason=reason,
                )
            else:
                services.override_update(
                    override=item, kind=item.kind, note=item.note, actor=actor, source=Source.ADMIN, reason=reason
                )

    # --- bulk import and removal of allow/deny lists ---

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "<int:flag_id>/lists/",
                self.admin_site.admin_view(self.lists_view),
                name="flags_flag_lists",
            )
        ]
        return custom + super().get_urls()

    def lists_view(self, request: HttpRequest, flag_id: int) -> HttpResponse:
        flag = get_object_or_404(Flag, pk=flag_id)
        if not self.has_change_permission(request, flag):
            raise PermissionDenied
        report = None
        if request.method == "POST":
            form = BulkListForm(request.POST, request.FILES)
            if form.is_valid():
                report = self._apply_bulk(request, flag, form)
                if report is not None and report.applied:
                    messages.success(request, _report_sentence(report))
        else:
            form = BulkListForm()
        context = {
            **self.admin_site.each_context(request),
            "title": f"Import or remove allow/deny lists: {flag.key}",
            "opts": self.model._meta,
            "original": flag,
            "flag": flag,
            "form": form,
            "report": report,
            "counts": selectors.override_counts(flag),
            "shown": 100,
        }
        return TemplateResponse(request, "admin/flags/flag/lists.html", context)

    def _apply_bulk(self, request: HttpRequest, flag: Flag, form: BulkListForm) -> services.BulkReport | None:
        data = form.cleaned_data
        actor = Actor.for_user(request.user)
        try:
            if data["operation"] == "add":
                return services.overrides_import(
                    flag=flag.key,
                    kind=data["kind"],
                    text=data["ids_text"],
                    note=data["note"],
                    actor=actor,
                    source=Source.ADMIN,
                    reason=data["reason"],
                )
            return services.overrides_bulk_remove(
                flag=flag.key,
                kind=data["kind"] or None,
                text=data["ids_text"],
                actor=actor,
                source=Source.ADMIN,
                reason=data["reason"],
            )
        except ValidationError as exc:
            form.add_error(None, _error_text(exc))
            return None


def _report_sentence(report: services.BulkReport) -> str:
    verb = "added to" if report.action == "overrides_import" else "removed from"
    where = f"the {report.kind} list" if report.kind else "the lists"
    parts = [f"{report.changed} user(s) {verb} {where}"]
    if report.unchanged:
        parts.append(f"{report.unchanged} already " + ("there" if verb == "added to" else "absent"))
    if report.duplicates:
        parts.append(f"{report.duplicates} duplicate line(s) skipped")
    if report.blank_lines:
        parts.append(f"{report.blank_lines} blank line(s) skipped")
    if report.conflicts:
        parts.append(f"{len(report.conflicts)} on the other list, left there (see below)")
    return "; ".join(parts) + "."


class BulkListForm(forms.Form):
    operation = forms.ChoiceField(choices=[("add", "Add to the list"), ("remove", "Remove from the list")])
    # Starts on the allow list, so that the form's defaults (add, allow) are a valid combination: "either
    # list" only makes sense for a removal.
    kind = forms.ChoiceField(
        choices=[*OverrideKind.choices, ("", "either list (removal only)")],
        required=False,
        initial=OverrideKind.ALLOW,
    )
    text = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "cols": 60}),
        help_text="One user id per line, or CSV whose first column is the user id (a 'user_id' header is "
        "skipped). Blank lines and repeats are skipped; surrounding spaces are trimmed.",
    )
    file = forms.FileField(required=False, help_text="Or upload a .csv/.txt file in the same format (UTF-8).")
    note = forms.CharField(required=False, max_length=500)
    reason = forms.CharField(required=False, max_length=1000, help_text="Kept in the audit log.")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}  # Django's clean() returns cleaned_data, typed as optional
        text = cleaned.get("text") or ""
        upload = cleaned.get("file")
        if upload is not None:
            try:
                text = (text + "\n" if text.strip() else "") + upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError({"file": "The file is not UTF-8 text."}) from None
        if not text.strip():
            raise ValidationError("Paste user ids or upload a file.")
        if cleaned.get("operation") == "add" and not cleaned.get("kind"):
            raise ValidationError({"kind": "Choose the list to add the users to."})
        cleaned["ids_text"] = text
        return cleaned


class UserOverrideAdminForm(forms.ModelForm):
    reason = forms.CharField(required=False, max_length=1000, help_text="Kept in the audit log.")

    class Meta:
        model = UserOverride
        fields = ["flag", "user_id", "kind", "note"]


@admin.register(UserOverride)
class UserOverrideAdmin(admin.ModelAdmin):
    form = UserOverrideAdminForm
    list_display = ["user_id", "flag", "kind", "note", "added_by", "created_at"]
    list_filter = ["kind", "flag", "created_at"]
    search_fields = ["user_id", "note"]
    list_select_related = ["flag"]
    list_per_page = 100
    show_full_result_count = False

    def get_fields(self, request: HttpRequest, obj: UserOverride | None = None) -> tuple[str, ...]:
        return ("flag", "user_id", "kind", "note", "reason", "added_by", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: UserOverride | None = None) -> list[str]:
        if obj is not None:
            return ["flag", "user_id", "added_by", "created_at"]
        return ["added_by", "created_at"]

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except (services.VersionConflict, services.FlagNotFound) as exc:
            messages.error(request, str(exc))
        except ValidationError as exc:
            messages.error(request, _error_text(exc))
        return HttpResponseRedirect(request.path)

    def save_model(self, request: HttpRequest, obj: UserOverride, form: UserOverrideAdminForm, change: bool) -> None:
        actor = Actor.for_user(request.user)
        reason = form.cleaned_data.get("reason", "")
        if change:
            updated = services.override_update(
                override=obj, kind=obj.kind, note=obj.note, actor=actor, source=Source.ADMIN, reason=reason
            )
        else:
            updated = services.override_add(
                flag=obj.flag.key,
                user_id=obj.user_id,
                kind=obj.kind,
                note=obj.note,
                actor=actor,
                source=Source.ADMIN,
                reason=reason,
            )
        obj.pk = updated.pk
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: UserOverride) -> None:
        services.override_remove(
            flag=obj.flag.key, user_id=obj.user_id, actor=Actor.for_user(request.user), source=Source.ADMIN
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UserOverride]) -> None:
        by_flag: dict[str, list[str]] = defaultdict(list)
        for key, user_id in queryset.values_list("flag__key", "user_id"):
            by_flag[key].append(user_id)
        for key, user_ids in by_flag.items():
            services.overrides_bulk_remove(
                flag=key,
                user_ids=user_ids,
                actor=Actor.for_user(request.user),
                source=Source.ADMIN,
                reason="removed with the admin's delete action",
            )


# --- segments: named sets of users that any number of flags' rules name by key -------------------------------


class SegmentAdminForm(ServiceForm):
    conditions = JSONTextField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "cols": 100, "class": "vLargeTextField"}),
        help_text='A JSON list; a user is in the segment when every condition holds: [{"attribute": "country", '
        '"operator": "in", "values": ["FR", "BE"]}]. Empty: only the included user ids.',
    )
    included = UserIdsField(required=False, label="Included user ids",
                            help_text="Always in the segment. One per line or comma-separated.")
    excluded = UserIdsField(required=False, label="Excluded user ids",
                            help_text="Never in the segment, whatever the conditions. One per line or comma-separated.")
    reason = forms.CharField(required=False, max_length=1000, widget=forms.TextInput(attrs={"size": 80}),
                             help_text="Why you make this change: kept in the audit log.")
    expected_version = forms.IntegerField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Segment
        fields = ["key", "name", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.fields["expected_version"].initial = self.instance.version
            self.fields["conditions"].initial = self.instance.conditions
            members: dict[str, list[str]] = {MemberKind.INCLUDED: [], MemberKind.EXCLUDED: []}
            for user_id, kind in self.instance.members.order_by("user_id").values_list("user_id", "kind"):
                members[kind].append(user_id)
            self.fields["included"].initial = members[MemberKind.INCLUDED]
            self.fields["excluded"].initial = members[MemberKind.EXCLUDED]

    def clean_conditions(self) -> Any:
        conditions = self.cleaned_data["conditions"]
        if not isinstance(conditions, list):  # the services take any iterable here: a JSON object would be its keys
            raise ValidationError("A JSON list of conditions.", code="invalid")
        return conditions


@admin.register(Segment)
class SegmentAdmin(ServiceAdmin):
    form = SegmentAdminForm
    list_display = ["key", "name", "included_count", "excluded_count", "version", "used_by"]
    search_fields = ["key", "name"]
    actions = None  # no bulk delete: each deletion goes through services.segment_delete, which may refuse

    def get_fieldsets(self, request: HttpRequest, obj: Segment | None = None
                      ) -> tuple[tuple[str | None, _FieldOpts], ...]:
        main = ("name", "description") if obj is not None else ("key", "name", "description")
        sets: list[tuple[str | None, _FieldOpts]] = [
            (None, {"fields": main}),
            ("Who is in it", {"fields": ["conditions", "included", "excluded"]}),
            ("This change", {"fields": ["reason", "expected_version"]}),
        ]
        if obj is not None:
            sets.insert(1, ("State", {"fields": ["key", "version", "used_by", "links", "created_at", "updated_at"]}))
        return tuple(sets)

    def get_readonly_fields(self, request: HttpRequest, obj: Segment | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("key", "version", "used_by", "links", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Segment]:
        return super().get_queryset(request).annotate(
            included_count=Count("members", filter=Q(members__kind=MemberKind.INCLUDED)),
            excluded_count=Count("members", filter=Q(members__kind=MemberKind.EXCLUDED)),
        )

    @admin.display(description="included", ordering="included_count")
    def included_count(self, obj: Segment) -> int:
        return int(getattr(obj, "included_count", 0))  # an annotation of get_queryset

    @admin.display(description="excluded", ordering="excluded_count")
    def excluded_count(self, obj: Segment) -> int:
        return int(getattr(obj, "excluded_count", 0))  # an annotation of get_queryset

    @admin.display(description="flags using it")
    def used_by(self, obj: Segment) -> str:
        flags = selectors.flags_using(obj.key)
        if not flags:
            return "-"
        return format_html_join(
            ", ", '<a href="{}">{}</a>',
            ((reverse("admin:flags_flag_change", args=[flag.pk]), flag.key) for flag in flags),
        )

    @admin.display(description="")
    def links(self, obj: Segment) -> str:
        return format_html('<a href="{}?segment_key={}">Audit log</a>',
                           reverse("admin:flags_auditentry_changelist"), obj.key)

    def save_model(self, request: HttpRequest, obj: Segment, form: SegmentAdminForm, change: bool) -> None:
        data = form.cleaned_data
        actor = Actor.for_user(request.user)
        fields = {name: data[name] for name in ("name", "description", "conditions", "included", "excluded")}
        if change:
            saved = services.segment_update(segment=obj.key, actor=actor, source=Source.ADMIN, reason=data["reason"],
                                            expected_version=data.get("expected_version"), **fields)
        else:
            saved = services.segment_create(key=data["key"], actor=actor, source=Source.ADMIN,
                                            reason=data["reason"], **fields)
        obj.pk = saved.pk
        obj._state.adding = False
        obj.version = saved.version

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:  # a service's ValidationError is shown on the form (ServiceAdmin)
            return super().changeform_view(request, object_id, form_url, extra_context)
        except services.SegmentNotFound as exc:  # deleted meanwhile: nothing was written
            messages.error(request, f"Not saved: {exc}.")
            return HttpResponseRedirect(reverse("admin:flags_segment_changelist"))

    def delete_model(self, request: HttpRequest, obj: Segment) -> None:
        services.segment_delete(segment=obj.key, actor=Actor.for_user(request.user), source=Source.ADMIN)

    def delete_view(self, request: HttpRequest, object_id: str,
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.SegmentNotFound as exc:
            messages.error(request, f"Not deleted: {exc}.")
            return HttpResponseRedirect(reverse("admin:flags_segment_changelist"))
        except ValidationError as exc:  # still named by some flag's rules: nothing was deleted
            messages.error(request, f"The segment was not deleted: {' '.join(exc.messages)}.")
            return HttpResponseRedirect(reverse("admin:flags_segment_change", args=[object_id]))

    def get_deleted_objects(self, objs: Sequence[Segment] | QuerySet[Segment], request: HttpRequest
                            ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        # Django would list every member row (up to 100,000 of them) on the confirmation page; the members go
        # with their segment, and they are counted instead.
        segments = list(objs)
        described = [f"Segment: {segment.key} ({self.included_count(segment)} included and "
                     f"{self.excluded_count(segment)} excluded user ids)" for segment in segments]
        return described, {str(Segment._meta.verbose_name_plural): len(segments)}, set(), []


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_safe(value: str) -> str:
    # Spreadsheets run cells starting with these as formulas; reasons and ids are free text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "flag_key", "segment_key", "action", "actor", "source", "flag_version",
                    "short_reason"]
    list_filter = ["source", "action", "actor_kind", "flag", "created_at"]
    search_fields = ["actor", "flag_key", "segment_key", "reason", "action"]
    date_hierarchy = "created_at"
    change_list_template = "admin/flags/auditentry/change_list.html"
    actions = None
    list_per_page = 100
    fields = (
        "created_at",
        "flag_key",
        "segment_key",
        "flag_version",
        "action",
        "actor_kind",
        "actor",
        "source",
        "reason",
        "before_pretty",
        "after_pretty",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    @admin.display(description="reason")
    def short_reason(self, obj: AuditEntry) -> str:
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"

    @admin.display(description="before")
    def before_pretty(self, obj: AuditEntry) -> str:
        return format_html("<pre>{}</pre>", _pretty(obj.before))

    @admin.display(description="after")
    def after_pretty(self, obj: AuditEntry) -> str:
        return format_html("<pre>{}</pre>", _pretty(obj.after))

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path("export.csv", self.admin_site.admin_view(self.export_csv), name="flags_auditentry_export"),
        ]
        return custom + super().get_urls()

    def export_csv(self, request: HttpRequest) -> StreamingHttpResponse:
        """The changelist's current filters and search, as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        queryset = changelist.get_queryset(request)
        writer = csv.writer(_Echo())
        header = ["created_at", "flag", "segment", "flag_version", "action", "actor_kind", "actor", "source", "reason",
                  "before", "after"]

        def rows() -> Iterator[str]:
            yield writer.writerow(header)
            for entry in queryset.iterator(chunk_size=2000):
                yield writer.writerow(
                    [
                        entry.created_at.isoformat(),
                        _csv_safe(entry.flag_key),
                        entry.segment_key,
                        entry.flag_version,
                        entry.action,
                        entry.actor_kind,
                        _csv_safe(entry.actor),
                        entry.source,
                        _csv_safe(entry.reason),
                        json.dumps(entry.before, sort_keys=True),
                        json.dumps(entry.after, sort_keys=True),
                    ]
                )

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
        return response


def _pretty(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 20_000 else text[:20_000] + "\n… (truncated here; the CSV export has it all)"
