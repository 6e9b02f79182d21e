"""Behaviour events and personalised recommendations."""
