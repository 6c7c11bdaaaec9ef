"""Segments on the dashboard: the list, a segment's page, and the forms that create, change and delete one.

Every write is flags.services' (segment_create, segment_update, segment_delete), which validates under its
locks and writes the audit entry; these views read the form, show each refusal next to the field it names
(400), a stale page's change as 409, and nothing else. Viewers read; managers write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from flags import selectors, services
from flags.actors import Actor
from flags.forms import JSONTextField, UserIdsField, show_refusal
from flags.models import KEY_VALIDATOR, AuditEntry, Flag, MemberKind, Segment, Source

from ..access import HtmxHttpRequest, can_manage, manager_required, viewer_required
from ..templatetags.rollout_format import utc
from .rules import condition_words

IDS_SHOWN = 200
AUDIT_SHOWN = 20
REASON_MAX_LENGTH = 1000  # as the admin's and the flag page's reason fields
CONDITIONS_HELP = ('A JSON list; a user is in the segment when every condition holds, e.g. [{"attribute": "email", '
                   '"operator": "ends_with", "values": ["@ourcompany.com"]}]. Empty: only the included user ids.')


# --- reads (flags.selectors) ------------------------------------------------------------------------------------


def _segment_or_404(key: str) -> Segment:
    segment = selectors.segment_get(key)
    if segment is None:
        raise Http404(f"no segment {key!r}")
    return segment


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One line of the segments list."""

    segment: Segment
    included: int
    excluded: int
    flags: list[Flag]


def _segment_rows() -> list[SegmentRow]:
    segments = list(Segment.objects.order_by("key"))
    counts = selectors.segment_member_counts(segments)
    using = selectors.flags_by_segment()
    return [SegmentRow(s, *counts[s.pk], using.get(s.key, [])) for s in segments]


def _members(segment: Segment) -> dict[str, list[str]]:
    included, excluded = selectors.segment_members(segment)
    return {MemberKind.INCLUDED: included, MemberKind.EXCLUDED: excluded}


# --- the segment in words --------------------------------------------------------------------------------------


# --- forms -----------------------------------------------------------------------------------------------------


def _say_reason_required(form: forms.BaseForm) -> None:
    """The reason is required from the dashboard unless DASHBOARD_REASON_REQUIRED=0 (services.require_reason
    checks it; the form only says so)."""
    if settings.DASHBOARD_REASON_REQUIRED:
        field = form.fields["reason"]
        field.help_text = f"Required. {field.help_text}"
        field.widget.attrs["aria-required"] = "true"


class SegmentForm(forms.ModelForm):
    """The model's rules for key, name and description (length, key validator, unique key); the conditions as
    JSON and the ids as the admin reads them (flags.admin). The service checks everything again."""

    conditions = JSONTextField(required=False, label="Conditions (JSON)", help_text=CONDITIONS_HELP,
                               widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}))
    included = UserIdsField(required=False, label="Included user ids",
                            help_text="Always in the segment. One per line or comma-separated.",
                            widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}))
    excluded = UserIdsField(required=False, label="Excluded user ids",
                            help_text="Never in the segment, whatever the conditions. One per line or comma-separated.",
                            widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}))
    reason = forms.CharField(required=False, max_length=REASON_MAX_LENGTH, label="Reason",
                             help_text="Why you make this change: kept in the audit log.")

    class Meta:
        model = Segment
        fields = ["key", "name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        help_texts = {"key": f"{KEY_VALIDATOR.message} {Segment._meta.get_field('key').help_text}"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")  # labels read exactly "Key", "Name"...
        super().__init__(*args, **kwargs)
        _say_reason_required(self)

    def clean_conditions(self) -> Any:
        conditions = self.cleaned_data["conditions"]
        if not isinstance(conditions, list):  # the service refuses it too; here it is said on the field at once
            raise ValidationError("A JSON list of conditions.", code="invalid")
        return conditions


class SegmentEditForm(SegmentForm):
    expected_version = forms.IntegerField(required=False, widget=forms.HiddenInput)

    class Meta(SegmentForm.Meta):
        fields = ["name", "description"]

    def __init__(self, *args: Any, members: dict[str, list[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.fields["expected_version"].initial = self.instance.version
            self.fields["conditions"].initial = self.instance.conditions
            self.fields["included"].initial = (members or {}).get(MemberKind.INCLUDED, [])
            self.fields["excluded"].initial = (members or {}).get(MemberKind.EXCLUDED, [])


class DeleteForm(forms.Form):
    reason = forms.CharField(required=False, max_length=REASON_MAX_LENGTH, label="Reason",
                             help_text="Why you delete it: kept in the audit log.")
    confirm = forms.BooleanField(required=True, label="Yes, delete this segment",
                                 error_messages={"required": "Tick the box to confirm the deletion."})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        _say_reason_required(self)


def _redirect(request: HtmxHttpRequest, url: str) -> HttpResponse:
    if request.htmx:
        return HttpResponseClientRedirect(url)
    response = HttpResponseRedirect(url)
    response.status_code = 303  # See Other: the browser GETs the page
    return response


def _stale(segment: Segment, expected: int | None) -> str:
    """Why a change based on an older version of the segment was refused: who changed it, when."""
    last = AuditEntry.objects.filter(segment_key=segment.key).order_by("-created_at", "-id").first()
    who = f" by {last.actor} ({last.get_source_display()}) at {utc(last.created_at)}" if last else ""
    return (f"Refused: segment {segment.key!r} was changed{who} since you loaded the page (version {expected}, "
            f"now {segment.version}). Nothing was changed: reload the page to see it, then make your change again.")


# --- pages -----------------------------------------------------------------------------------------------------


@require_GET
@viewer_required
def segment_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "segments/segment_list.html",
                  {"rows": _segment_rows(), "can_manage": can_manage(request.user)})


@require_http_methods(["GET", "POST"])
@manager_required("create segments")
def segment_new(request: HtmxHttpRequest) -> HttpResponse:
    template = "segments/segment_new.html"
    if request.htmx:
        template += "#segment-form"
    if request.method != "POST":
        return render(request, template, {"form": SegmentForm()})
    form = SegmentForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            segment = services.segment_create(
                key=data["key"], name=data["name"], description=data["description"],
                conditions=data["conditions"], included=data["included"], excluded=data["excluded"],
                reason=data["reason"], actor=Actor.for_user(request.user), source=Source.UI)
        except ValidationError as exc:
            show_refusal(form, exc)
        else:
            return _redirect(request, reverse("segments:detail", args=[segment.key]))
    return render(request, template, {"form": form}, status=400)


def _detail(request: HtmxHttpRequest, segment: Segment, *, partial: str = "", status: int = 200,
            edit_form: SegmentEditForm | None = None, delete_form: DeleteForm | None = None,
            error: str = "") -> HttpResponse:
    members = _members(segment)
    manager = can_manage(request.user)
    context = {
        "segment": segment,
        "conditions": [condition_words(c) for c in segment.conditions],
        "included": members[MemberKind.INCLUDED][:IDS_SHOWN],
        "excluded": members[MemberKind.EXCLUDED][:IDS_SHOWN],
        "included_count": len(members[MemberKind.INCLUDED]),
        "excluded_count": len(members[MemberKind.EXCLUDED]),
        "ids_shown": IDS_SHOWN,
        "flags": selectors.flags_using(segment.key),
        "audit": selectors.audit_for_segment(segment.key, limit=AUDIT_SHOWN),
        "can_manage": manager,
        "edit_form": edit_form or (SegmentEditForm(instance=segment, members=members) if manager else None),
        "delete_form": delete_form or (DeleteForm() if manager else None),
        "error": error,
    }
    template = "segments/segment_detail.html"
    if partial and request.htmx:
        template += f"#{partial}"
    return render(request, template, context, status=status)


@require_GET
@viewer_required
def segment_detail(request: HtmxHttpRequest, key: str) -> HttpResponse:
    return _detail(request, _segment_or_404(key))


@require_POST
@manager_required("change segments")
def segment_edit(request: HtmxHttpRequest, key: str) -> HttpResponse:
    segment = _segment_or_404(key)
    # A copy for the form: ModelForm validation writes the typed values onto its instance.
    form = SegmentEditForm(request.POST, instance=Segment.objects.get(pk=segment.pk))
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.segment_update(
                segment=segment.key, name=data["name"], description=data["description"],
                conditions=data["conditions"], included=data["included"], excluded=data["excluded"],
                reason=data["reason"], expected_version=data["expected_version"],
                actor=Actor.for_user(request.user), source=Source.UI)
        except services.SegmentNotFound:
            raise Http404(f"no segment {key!r}: deleted meanwhile") from None
        except ValidationError as exc:
            if hasattr(exc, "error_dict") and "expected_version" in exc.error_dict:
                current = _segment_or_404(key)
                return _detail(request, current, partial="segment-edit", status=409, edit_form=form,
                               error=_stale(current, data["expected_version"]))
            show_refusal(form, exc)
        else:
            return _redirect(request, reverse("segments:detail", args=[segment.key]))
    return _detail(request, segment, partial="segment-edit", status=400, edit_form=form)


@require_POST
@manager_required("delete segments")
def segment_delete(request: HtmxHttpRequest, key: str) -> HttpResponse:
    segment = _segment_or_404(key)
    form = DeleteForm(request.POST)
    if form.is_valid():
        reason = form.cleaned_data["reason"]
        try:
            services.segment_delete(segment=segment.key, reason=reason, actor=Actor.for_user(request.user),
                                    source=Source.UI)
        except services.SegmentNotFound:
            raise Http404(f"no segment {key!r}: deleted meanwhile") from None
        except ValidationError as exc:
            # "segment": still named by some flags' rules, which the message lists.
            for name, texts in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, texts)
        else:
            return _redirect(request, reverse("segments:list"))
    return _detail(request, segment, partial="segment-delete", status=400, delete_form=form)
