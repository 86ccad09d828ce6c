"""Projects and API keys, within the member's account and role.

Every object named in a URL is looked up inside the member's account (and, for a developer's
keys, their projects): another account's id is a 404, the same as an id that does not exist.
"""

from typing import Any

from django.contrib import messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_POST

from customers.members import may, member_projects, member_reaches
from customers.models import ApiKey, Member, Project
from customers.services import (
    api_key_issue,
    api_key_revoke,
    project_archive,
    project_create,
    project_update,
)
from portal.access import forbidden, member_required
from portal.forms import LIMIT_LABELS, KeyForm, ProjectForm

# The new key's plaintext waits here for the one page that shows it, which removes it.
_NEW_KEY = "portal_new_key"


def _project(member: Member, project_id: int) -> Project:
    return get_object_or_404(Project, pk=project_id, account_id=member.account_id)


@member_required("projects.read")
def projects(request: HttpRequest, member: Member) -> HttpResponse:
    rows = Project.objects.filter(account_id=member.account_id).order_by(
        "archived_at", "-is_default", "name"
    )
    context = {
        "member": member,
        "title": "Projects",
        "projects": rows,
        "can_write": may(member, "projects.write"),
        "limit_labels": LIMIT_LABELS,
    }
    return TemplateResponse(request, "portal/projects.html", context)


@member_required("projects.write")
def project_new(request: HttpRequest, member: Member) -> HttpResponse:
    form = ProjectForm(request.POST or None, member=member)
    if request.method == "POST" and form.is_valid():
        data = form.data_for_service()
        project = project_create(
            account=member.account,
            name=form.cleaned_data["name"],
            data=data,
            actor=member.user,
            request=request,
        )
        messages.success(request, f"Project {project.name} created.")
        return redirect("portal:projects")
    return _project_form(request, member, form, None)


@member_required("projects.write")
def project_edit(request: HttpRequest, member: Member, project_id: int) -> HttpResponse:
    project = _project(member, project_id)
    if project.archived_at is not None:
        raise Http404("archived")
    form = ProjectForm(
        request.POST or None,
        member=member,
        project=project,
        initial=ProjectForm.initial_of(project),
    )
    if request.method == "POST" and form.is_valid():
        data = {"name": form.cleaned_data["name"], **form.data_for_service()}
        project_update(project=project, data=data, actor=member.user, request=request)
        messages.success(request, f"Project {data['name']} saved.")
        return redirect("portal:projects")
    return _project_form(request, member, form, project)


def _project_form(
    request: HttpRequest, member: Member, form: ProjectForm, project: Project | None
) -> HttpResponse:
    title = f"Edit {project.name}" if project else "New project"
    context = {"member": member, "title": title, "form": form, "project": project}
    return TemplateResponse(request, "portal/project_form.html", context)


@member_required("projects.write")
def project_archive_confirm(request: HttpRequest, member: Member, project_id: int) -> HttpResponse:
    """GET asks to confirm (naming the keys it revokes); POST archives."""
    project = _project(member, project_id)
    if project.archived_at is not None or project.is_default:
        raise Http404("not archivable")
    if request.method == "POST":
        project_archive(project=project, actor=member.user, request=request)
        messages.success(request, f"Project {project.name} archived; its keys are revoked.")
        return redirect("portal:projects")
    live_keys = ApiKey.objects.filter(project=project, revoked_at=None).order_by("name")
    context = {
        "member": member,
        "title": f"Archive {project.name}?",
        "project": project,
        "keys": live_keys,
    }
    return TemplateResponse(request, "portal/project_archive.html", context)


def visible_keys(member: Member) -> QuerySet[ApiKey]:
    """The keys a member may see: their account's, a developer's only in their projects."""
    keys = ApiKey.objects.filter(account_id=member.account_id)
    if member.role == Member.Role.DEVELOPER:
        keys = keys.filter(project__members=member)
    return keys


@member_required("keys.read")
def keys(request: HttpRequest, member: Member) -> HttpResponse:
    rows = visible_keys(member).select_related("project", "created_by__user")
    context = {
        "member": member,
        "title": "API keys",
        "keys": rows.order_by("revoked_at", "-created_at"),
        "can_create": any(True for _ in member_projects(member)),
    }
    return TemplateResponse(request, "portal/keys.html", context)


@member_required("keys.write")
def key_new(request: HttpRequest, member: Member) -> HttpResponse:
    form = KeyForm(request.POST or None, member=member)
    if request.method == "POST" and form.is_valid():
        project = form.cleaned_data["project"]
        if not member_reaches(member, project):
            return forbidden(request, member)
        issued = api_key_issue(
            account=member.account,
            project=project,
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_on"],
            actor=member.user,
            request=request,
            created_by=member,
        )
        request.session[_NEW_KEY] = {"id": issued.api_key.pk, "plaintext": issued.plaintext}
        return redirect("portal:key-created", api_key_id=issued.api_key.pk)
    context = {"member": member, "title": "New API key", "form": form}
    return TemplateResponse(request, "portal/key_form.html", context)


@member_required("keys.write")
def key_created(request: HttpRequest, member: Member, api_key_id: int) -> HttpResponse:
    """The new key's secret, once: the session forgets it as this page is drawn."""
    api_key = get_object_or_404(visible_keys(member), pk=api_key_id)
    new: dict[str, Any] = request.session.get(_NEW_KEY) or {}
    plaintext = new.get("plaintext") if new.get("id") == api_key.pk else None
    if plaintext is not None:
        del request.session[_NEW_KEY]
    context = {
        "member": member,
        "title": "Your new API key",
        "key": api_key,
        "plaintext": plaintext,
    }
    return TemplateResponse(request, "portal/key_created.html", context)


@require_POST
@member_required("keys.write")
def key_revoke(request: HttpRequest, member: Member, api_key_id: int) -> HttpResponse:
    api_key = get_object_or_404(visible_keys(member), pk=api_key_id)
    if api_key.revoked_at is None:
        api_key_revoke(key_id=api_key.key_id, actor=member.user, request=request)
        messages.success(request, f"Key {api_key.name or api_key} revoked.")
    return redirect("portal:keys")
