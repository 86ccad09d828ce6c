from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("report/<str:period>.<str:fmt>", views.finance_report, name="finance-report"),
]
