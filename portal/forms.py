"""The portal's forms: each checks everything a member can type, so a bad value is a message
on the form and changes nothing (the services then write what the form cleaned)."""

import datetime as dt
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest
from django.utils import timezone
from django_otp import devices_for_user, user_has_device

from customers.members import Role, member_projects
from customers.models import HARD_CAP_MOST, LIMIT_FIELDS, ApiKey, Member, Project
from customers.services import project_limits_check

LIMIT_LABELS = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "tokens_per_day": "Tokens per day (UTC)",
    "tokens_per_month": "Tokens per month",
    "max_concurrent_requests": "Concurrent requests",
    "max_tokens_per_request": "Tokens per request",
    "max_context_tokens": "Context tokens",
}
# PositiveIntegerField's ceiling: larger values would not fit the column.
_LIMIT_MOST = 2_147_483_647


class SignInForm(forms.Form):
    """Email and password, and the authenticator's code once the member has set one up.

    Failures (a wrong password or a wrong code) count towards django-axes's lockout of the
    username from this address, like the staff console's."""

    username = forms.CharField(label="Email", max_length=254)
    password = forms.CharField(widget=forms.PasswordInput, strip=False)
    otp_token = forms.CharField(
        label="Authenticator code", required=False, max_length=8, help_text="If you set one up."
    )

    def __init__(
        self, request: HttpRequest, *args: Any, joining: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.request = request
        self.joining = joining
        self.user: Any = None
        self.device: Any = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        username = (cleaned.get("username") or "").strip().lower()
        password = cleaned.get("password")
        if not username or not password:
            return cleaned
        user = authenticate(self.request, username=username, password=password)
        if user is None or not user.is_active:
            raise forms.ValidationError("That email and password do not match a member.")
        if user_has_device(user):
            self.device = _device_for(user, cleaned.get("otp_token") or "")
            if self.device is None:
                user_login_failed.send(
                    sender=__name__, credentials={"username": username}, request=self.request
                )
                raise forms.ValidationError("Enter the current code from your authenticator.")
        if not self.joining and not Member.objects.filter(user=user).exists():
            raise forms.ValidationError("That user is not a member of any account.")
        self.user = user
        return cleaned


def _device_for(user: Any, token: str) -> Any:
    token = token.strip().replace(" ", "")
    if not token.isdigit():
        return None
    for device in devices_for_user(user, confirmed=True):
        if device.verify_token(token):
            return device
    return None


class PasswordPairForm(forms.Form):
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput, strip=False)
    password2 = forms.CharField(label="Password again", widget=forms.PasswordInput, strip=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        one, two = cleaned.get("password1"), cleaned.get("password2")
        if one and two and one != two:
            self.add_error("password2", "The two passwords differ.")
        elif one:
            try:
                password_validation.validate_password(one)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned


class SignUpForm(PasswordPairForm):
    """A new person accepting an invitation: their name and a password (the email is the
    invitation's)."""

    first_name = forms.CharField(label="First name", max_length=150)
    last_name = forms.CharField(label="Last name", max_length=150, required=False)
    field_order = ["first_name", "last_name", "password1", "password2"]


def _limit_field(name: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=LIMIT_LABELS[name],
        required=False,
        min_value=1,
        max_value=_LIMIT_MOST,
        help_text="Empty: as the account.",
    )


class ProjectForm(forms.Form):
    """A project's name, limits (within the account's) and monthly budget."""

    name = forms.CharField(max_length=100)
    monthly_budget = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=18,
        decimal_places=2,
        help_text="Per calendar month, in the billing currency. Empty: none.",
    )
    budget_hard_cap = forms.BooleanField(
        required=False, label="Stop calls once the budget is spent"
    )

    def __init__(self, *args: Any, member: Member, project: Project | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.member = member
        self.project = project
        for name in LIMIT_FIELDS:
            self.fields[name] = _limit_field(name)

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"]).strip()
        if not name:
            raise forms.ValidationError("A project needs a name.")
        taken = Project.objects.filter(
            account_id=self.member.account_id, name=name, archived_at=None
        )
        if self.project is not None:
            taken = taken.exclude(pk=self.project.pk)
        if taken.exists():
            raise forms.ValidationError("Another live project has this name.")
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        limits = {name: cleaned.get(name) for name in LIMIT_FIELDS}
        for name, message in project_limits_check(self.member.account, limits).items():
            self.add_error(name, message)
        budget = cleaned.get("monthly_budget")
        if cleaned.get("budget_hard_cap"):
            if budget is None:
                self.add_error("monthly_budget", "A hard stop needs a budget.")
            elif budget > HARD_CAP_MOST:
                self.add_error("monthly_budget", f"With a hard stop, at most {HARD_CAP_MOST:,}.")
        return cleaned

    def data_for_service(self) -> dict[str, Any]:
        return {
            name: self.cleaned_data.get(name)
            for name in (*LIMIT_FIELDS, "monthly_budget", "budget_hard_cap")
        }

    @staticmethod
    def initial_of(project: Project) -> dict[str, Any]:
        fields = ("name", *LIMIT_FIELDS, "monthly_budget", "budget_hard_cap")
        return {name: getattr(project, name) for name in fields}


class KeyForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        help_text="UTC, at the start of that day. Empty: never.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def __init__(self, *args: Any, member: Member, **kwargs: Any):
        super().__init__(*args, **kwargs)
        projects = member_projects(member)
        self.fields["project"].queryset = projects  # type: ignore[attr-defined]

    def clean_expires_on(self) -> dt.datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        at = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        if at <= timezone.now():
            raise forms.ValidationError("Pick a day after today.")
        return at


class UsageFilterForm(forms.Form):
    """The usage page's filter (GET): everything optional; dates are UTC days, both included."""

    project = forms.ModelChoiceField(queryset=Project.objects.none(), required=False)
    key = forms.ModelChoiceField(queryset=ApiKey.objects.none(), required=False)
    model = forms.CharField(required=False, max_length=128)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, projects: Any, keys: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects  # type: ignore[attr-defined]
        self.fields["key"].queryset = keys  # type: ignore[attr-defined]
        self.fields["key"].label_from_instance = _key_label  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The range ends before it starts.")
        return cleaned


def _key_label(key: ApiKey) -> str:
    return f"{key.name or 'unnamed'} (tf_{key.key_id}_…)"


def _role_choices(member: Member) -> list[tuple[str, str]]:
    """Owners make owners; admins the other roles."""
    roles = Role.choices if member.role == Role.OWNER else Role.choices[1:]
    return [(value, str(label)) for value, label in roles]


class MemberForm(forms.Form):
    """A member's role and (developers') projects, as the member `member` may set them."""

    role = forms.ChoiceField()
    projects = forms.ModelMultipleChoiceField(
        queryset=Project.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="For developers: the projects whose keys they manage.",
    )

    def __init__(self, *args: Any, member: Member, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = _role_choices(member)  # type: ignore[attr-defined]
        self.fields["projects"].queryset = member_projects(member)  # type: ignore[attr-defined]


class InviteForm(MemberForm):
    email = forms.EmailField(max_length=254)
    field_order = ["email", "role", "projects"]


class CodeForm(forms.Form):
    token = forms.CharField(label="Code from your authenticator", max_length=8)


class MemberPasswordResetForm(PasswordResetForm):
    """Resets for members only: staff reset theirs in the console, behind its two factors."""

    def get_users(self, email: str) -> Any:
        return (
            user
            for user in super().get_users(email)
            if not user.is_staff and Member.objects.filter(user=user).exists()
        )
