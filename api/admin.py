from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from flags.actors import Actor

from .keys import api_key_create, api_key_revoke
from .models import ApiKey, Scope


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ["name", "scopes"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "prefix", "scope_list", "created_by", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return ["name", "scopes"]
        return ["name", "prefix", "scope_list", "created_by", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return []
        return self.get_fields(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: the audit log names keys, and revocation is itself a record

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:
            return
        key, secret = api_key_create(name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"],
                                     created_by=Actor.for_user(request.user).name)
        obj.pk = key.pk
        obj._state.adding = False
        messages.warning(
            request,
            f"The secret of API key {key.name!r} is {secret} — copy it now: it is shown only this once and "
            "only its hash is stored.",
        )

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        for key in queryset:
            api_key_revoke(key=key)
        messages.success(request, f"Revoked {queryset.count()} key(s); every process drops them within a second.")
