from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from flags.actors import Actor

from .keys import NAME_RE, api_key_create, api_key_revoke
from .models import ApiKey, Scope


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ["name", "scopes"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not NAME_RE.match(name):  # the rule api_key_create enforces, as a form error rather than a 500
            raise forms.ValidationError("1-100 characters: letters, digits and . _ : @ -, starting with a letter "
                                        "or digit")
        return name


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "prefix", "scope_list", "created_by", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("name", "scopes")
        return ("name", "prefix", "scope_list", "created_by", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return self.get_fields(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: the audit log names keys, and revocation is itself a record

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ApiKeyForm, change: bool) -> None:
        if change:
            return
        key, secret = api_key_create(name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"],
                                     created_by=Actor.for_user(request.user).name)
        obj.pk = key.pk
        obj._state.adding = False
        # Kept on this request's object only, for response_add: never in a message (the messages cookie is
        # signed, not encrypted) nor in the session.
        obj._new_secret = secret

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        """The secret, shown once in the response to the request that created the key (whichever save
        button was used): no redirect, so it never has to be carried to a second request."""
        secret = obj._new_secret
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        key = ApiKey.objects.get(pk=obj.pk)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "key": key, "secret": secret,
                   "title": f"API key {key.name} created: copy its secret now"}
        response: HttpResponse = TemplateResponse(request, "admin/api/apikey/secret.html", context)
        add_never_cache_headers(response)  # no browser or proxy may keep a copy of the page
        return response

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)
        messages.success(request, f"Revoked {queryset.count()} key(s); every process drops them within a second.")
